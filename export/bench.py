"""`twin bench export`: ways of producing predictions, side by side in one run on this machine.

For twins of the given presets (convolutional or transformer) and neuron count (random weights:
speed does not depend on them):
- PyTorch eager and ONNX Runtime on whole trials (the clip graph), batch 1;
- ONNX Runtime streaming the step graph, one frame per call;
- the anchors' live prediction: re-running the minimal receptive-field window for every new frame,
  in ONNX Runtime and in PyTorch eager (for a transformer: the step graph attends from its
  key/value cache, the re-run recomputes every frame's tokens, keys and values).
Each as output frames per second and achieved GFLOP/s, as a fraction of this machine's measured
fp32 matrix-product rate → benchmarks/results/export.json.
"""

from __future__ import annotations

import itertools
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from twinserve.training.checkpoint import write_json
from twinserve.training.model import Twin
from twinserve.training.presets import PRESETS
from twinserve.training.transformer import TransformerCore

from .onnx_export import INPUTS, export_clip, export_step, random_inputs, state_bytes, state_names


def layer_costs(twin: Twin, height: int = 36, width: int = 64) -> tuple[list[tuple[float, float, int]], float]:
    """Convolutional twin: FLOPs (2 × multiply-adds) per layer: (spatial conv per input frame,
    temporal conv per output frame, kt), and the readout's per output frame."""
    costs, x = [], torch.zeros(1, 3, 1, height, width)
    with torch.no_grad():
        for layer in twin.core.layers:
            x = layer.spatial(x)
            c_in, k = layer.spatial.in_channels, layer.spatial.kernel_size[-1]
            c_out, kt = x.shape[1], layer.temporal.kernel_size[0]
            positions = x.shape[-2] * x.shape[-1]
            costs.append((2 * positions * c_out * c_in * k * k, 2 * positions * c_out * c_out * kt, kt))
    return costs, 2 * _neurons(twin) * twin.core.out_channels


def transformer_flops(twin: Twin, frames: int, neurons: int, streamed: bool = False) -> float:
    """FLOPs of the transformer twin on a clip of `frames` input frames (each attention counted
    over its W-frame window), or with `streamed` of one frame from the key/value cache."""
    core = twin.core
    patches, dim = core.position.shape
    window, hidden = core.blocks[0].temporal.window, core.blocks[0].mlp[0].out_features
    total = frames * 2 * patches * dim * core.embed.weight[0].numel()
    for _ in core.blocks:
        outputs = 1 if streamed else frames - window + 1
        total += frames * 2 * patches * (4 * dim * dim + 2 * patches * dim)  # spatial: qkv, out, scores, sum
        total += frames * 2 * patches * 3 * dim * dim  # temporal q, k, v projections of every frame
        total += outputs * 2 * patches * (dim * dim + 2 * window * dim + 2 * dim * hidden)  # out, window, MLP
        frames = outputs
    return total + frames * (2 * patches * dim * core.unpatch.out_features + 2 * neurons * core.out_channels)


def clip_flops(twin: Twin, frames: int) -> float:
    """FLOPs of a clip of `frames` input frames (valid in time: each layer sees fewer frames)."""
    if isinstance(twin.core, TransformerCore):
        return transformer_flops(twin, frames, _neurons(twin))
    costs, readout = layer_costs(twin)
    total = 0.0
    for spatial, temporal, kt in costs:
        total += spatial * frames
        frames -= kt - 1
        total += temporal * frames
    return total + readout * frames


def step_flops(twin: Twin) -> float:
    """FLOPs of one streamed frame: every layer's spatial work on one frame and one temporal output."""
    if isinstance(twin.core, TransformerCore):
        return transformer_flops(twin, 1, _neurons(twin), streamed=True)
    costs, readout = layer_costs(twin)
    return sum(spatial + temporal for spatial, temporal, _ in costs) + readout


def _neurons(twin: Twin) -> int:
    return sum(h.readout.weight.shape[1] for h in twin.heads.values())


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matrix-product rate, GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def _rate(function, outputs: int, minimum_seconds: float = 2.0) -> float:
    """Output frames per second of `function` (which produces `outputs` frames per call)."""
    function()
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < minimum_seconds:
        function()
        calls += 1
    return outputs * calls / (time.perf_counter() - started)


def bench_preset(preset: str, neurons: int, frames: int, window_outputs: int, seconds: float, peak: float) -> dict:
    """Every path for one preset → {"paths": rates and arithmetic, "ratios": …}."""
    torch.manual_seed(0)
    twin = Twin(PRESETS[preset], {"m": neurons}).eval()
    receptive_field = twin.receptive_field
    video, behavior, pupil = random_inputs(1, frames)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder:
        export_clip(twin, "m", Path(folder) / "clip.onnx")
        shapes = export_step(twin, "m", Path(folder) / "step.onnx").state_shapes()
        clip = onnxruntime.InferenceSession(str(Path(folder) / "clip.onnx"), options, providers=["CPUExecutionProvider"])
        step = onnxruntime.InferenceSession(str(Path(folder) / "step.onnx"), options, providers=["CPUExecutionProvider"])
    whole = frames - receptive_field + 1
    state_in, _ = state_names(len(shapes))
    states = {name: np.zeros((1, *shape), np.float32) for name, shape in zip(state_in, shapes)}
    frame_index = itertools.cycle(range(frames))

    def torch_run(*arrays):
        with torch.inference_mode():
            twin("m", *map(torch.from_numpy, arrays))

    def onnx_run(*arrays):
        clip.run(None, dict(zip(INPUTS, arrays)))

    def onnx_step():
        t = next(frame_index)
        results = step.run(None, {"frame": video[:, t], "behavior": behavior[:, t], "pupil_center": pupil[:, t],
                                  **states})
        states.update(zip(state_in, results[1:]))

    def windows(run):
        def rerun():
            for end in range(receptive_field, receptive_field + window_outputs):
                run(*(a[:, end - receptive_field:end] for a in (video, behavior, pupil)))
        return rerun

    paths = {
        "pytorch_eager_clip": (lambda: torch_run(video, behavior, pupil), whole, clip_flops(twin, frames) / whole),
        "onnxruntime_clip": (lambda: onnx_run(video, behavior, pupil), whole, clip_flops(twin, frames) / whole),
        "onnxruntime_step_stream": (onnx_step, 1, step_flops(twin)),
        "onnxruntime_window_rerun": (windows(onnx_run), window_outputs, clip_flops(twin, receptive_field)),
        "pytorch_eager_window_rerun": (windows(torch_run), window_outputs, clip_flops(twin, receptive_field)),
    }
    results = {"receptive_field": receptive_field, "state_bytes_per_stream": state_bytes(shapes),
               "paths": {}}
    for name, (function, outputs, flops_per_output) in paths.items():
        rate = _rate(function, outputs, seconds)
        results["paths"][name] = {"output_frames_per_s": rate, "gflop_per_output_frame": flops_per_output / 1e9,
                                  "gflops": rate * flops_per_output / 1e9,
                                  "fraction_of_matmul_rate": rate * flops_per_output / 1e9 / peak}
    rates = {name: r["output_frames_per_s"] for name, r in results["paths"].items()}
    results["ratios"] = {
        "step_over_onnxruntime_window_rerun": rates["onnxruntime_step_stream"] / rates["onnxruntime_window_rerun"],
        "step_over_pytorch_window_rerun": rates["onnxruntime_step_stream"] / rates["pytorch_eager_window_rerun"],
        "onnxruntime_clip_over_pytorch_clip": rates["onnxruntime_clip"] / rates["pytorch_eager_clip"],
        "window_rerun_over_step_arithmetic": clip_flops(twin, receptive_field) / step_flops(twin),
    }
    return results


def run_bench(out: str | Path = "benchmarks/results/export.json", presets=("base", "vit-base"), neurons: int = 8000,
              frames: int = 300, window_outputs: int = 20, seconds: float = 3.0) -> dict:
    peak = matmul_gflops()
    results = {"neurons": neurons,
               "note": "GFLOP/s counts direct arithmetic: convolutions without fast algorithms (which can exceed the "
                       "measured matrix-product rate), attention over each query's W-frame window only",
               "machine": {"torch_threads": torch.get_num_threads(), "processor": platform.machine(),
                           "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                           "matmul_fp32_gflops": peak},
               "presets": {preset: bench_preset(preset, neurons, frames, window_outputs, seconds, peak)
                           for preset in presets}}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(out), results)
    return results
