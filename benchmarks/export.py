"""`twin bench export`: ways of producing predictions, side by side in one run on this machine.

For twins of the given presets (any core) and neuron count (random weights: speed does not depend
on them), measured interleaved:
- PyTorch eager and ONNX Runtime on whole trials (the clip graph), batch 1;
- ONNX Runtime streaming the step graph, one frame per call;
- the anchors' live prediction: re-running the minimal receptive-field window for every new frame,
  in ONNX Runtime and in PyTorch eager (for a transformer: the step graph attends from its
  key/value cache, the re-run recomputes every frame's tokens, keys and values). A twin with
  unbounded memory (recurrent) has no such window: these paths are skipped, and the JSON says so.
Each as output frames per second and achieved GFLOP/s (`Twin.clip_flops` / `Twin.step_flops`), as a
fraction of this machine's measured fp32 matrix-product rate → benchmarks/results/export.json.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from twinserve.contract import CLIP_INPUTS, RESPONSES, STEP_INPUTS, state_names
from twinserve.export.manifest import verified_path
from twinserve.export.onnx_export import random_inputs

from .harness import RESULTS, Workload, machine, measure, write_results
from .twins import RECORDING, export_random_twin

NOTE = ("GFLOP/s counts direct arithmetic: convolutions without fast algorithms (which can exceed the measured "
        "matrix-product rate), attention over each query's W-frame window only")
WINDOW_PATHS = ("onnxruntime_window_rerun", "pytorch_eager_window_rerun")


def _session(path: Path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _paths(twin, manifest, folder: Path, frames: int, window_outputs: int) -> dict[str, tuple[Workload, float]]:
    """Every path of one exported twin → {name: (workload in output frames, FLOPs per output frame)}."""
    clip, step = _session(verified_path(folder, RECORDING, "clip")), _session(verified_path(folder, RECORDING, "step"))
    video, behavior, pupil = random_inputs(1, frames, twin.frame_shape)
    shapes = [spec.fixed_shape for spec in manifest.graph(RECORDING, "step").states]
    state_in, state_out = state_names(len(shapes))
    states = {name: np.zeros((1, *shape), np.float32) for name, shape in zip(state_in, shapes)}
    frame_index = itertools.cycle(range(frames))

    def torch_run(*arrays):
        with torch.inference_mode():
            twin(RECORDING, *map(torch.from_numpy, arrays))

    def onnx_run(*arrays):
        clip.run([RESPONSES], dict(zip(CLIP_INPUTS, arrays)))

    def onnx_step():
        t = next(frame_index)
        inputs = dict(zip(STEP_INPUTS, (video[:, t], behavior[:, t], pupil[:, t])))
        results = step.run([RESPONSES, *state_out], {**inputs, **states})
        states.update(zip(state_in, results[1:]))

    whole = frames - twin.offset
    paths = {"pytorch_eager_clip": (Workload(lambda: torch_run(video, behavior, pupil), whole),
                                    twin.clip_flops(frames) / whole),
             "onnxruntime_clip": (Workload(lambda: onnx_run(video, behavior, pupil), whole),
                                  twin.clip_flops(frames) / whole),
             "onnxruntime_step_stream": (Workload(onnx_step, 1), twin.step_flops())}
    window = twin.receptive_field
    if window is not None:
        if frames < window + window_outputs - 1:
            raise ValueError(f"{frames} frames hold fewer than {window_outputs} windows of {window} frames")

        def rerun(run):
            return lambda: [run(*(a[:, end - window:end] for a in (video, behavior, pupil)))
                            for end in range(window, window + window_outputs)]

        for name, run in zip(WINDOW_PATHS, (onnx_run, torch_run)):
            paths[name] = (Workload(rerun(run), window_outputs), twin.clip_flops(window))
    return paths


def _ratios(twin, rates: dict[str, float]) -> dict[str, float]:
    ratios = {"onnxruntime_clip_over_pytorch_clip": rates["onnxruntime_clip"] / rates["pytorch_eager_clip"]}
    if twin.receptive_field is not None:
        step = rates["onnxruntime_step_stream"]
        ratios.update({"step_over_onnxruntime_window_rerun": step / rates["onnxruntime_window_rerun"],
                       "step_over_pytorch_window_rerun": step / rates["pytorch_eager_window_rerun"],
                       "window_rerun_over_step_arithmetic": twin.clip_flops(twin.receptive_field) / twin.step_flops()})
    return ratios


def bench_preset(preset: str, neurons: int, frames: int, window_outputs: int, seconds: float, repeats: int,
                 peak: float) -> dict:
    """Every path for one preset, interleaved → {"paths": rates and arithmetic, "ratios": …}."""
    with tempfile.TemporaryDirectory() as folder:
        twin, manifest = export_random_twin(preset, neurons, folder)
        paths = _paths(twin, manifest, Path(folder), frames, window_outputs)
    rates = measure({name: workload for name, (workload, _) in paths.items()}, seconds, repeats)
    results = {"receptive_field": twin.receptive_field,
               "state_bytes_per_stream": manifest.graph(RECORDING, "step").details["state_bytes_per_stream"],
               "paths": {}}
    for name, (_, flops) in paths.items():
        rate, gflops = rates[name].median, rates[name].median * flops / 1e9
        results["paths"][name] = {"output_frames_per_s": rate, "spread": rates[name].spread,
                                  "gflop_per_output_frame": flops / 1e9, "gflops": gflops,
                                  "fraction_of_matmul_rate": gflops / peak}
    if twin.receptive_field is None:
        results["skipped"] = {name: "unbounded memory (recurrent): no finite receptive-field window to re-run"
                              for name in WINDOW_PATHS}
    results["ratios"] = _ratios(twin, {name: r.median for name, r in rates.items()})
    return results


def run_bench(out: str | Path = f"{RESULTS}/export.json", presets=("base", "vit-base"), neurons: int = 8000,
              frames: int = 300, window_outputs: int = 20, seconds: float = 1.0, repeats: int = 3) -> dict:
    """Every preset's paths, `repeats` interleaved rounds of ≥ `seconds` each → results (also written to `out`)."""
    facts = machine(matmul=True)
    results = {"neurons": neurons, "note": NOTE, "machine": facts, "repeats": repeats,
               "presets": {preset: bench_preset(preset, neurons, frames, window_outputs, seconds, repeats,
                                                facts["matmul_fp32_gflops"])
                           for preset in presets}}
    write_results(results, out)
    return results
