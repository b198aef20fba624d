"""`twin demo`: the main job end to end on the embedded default.

virtual mouse → train the `small` twin → export → serve with Triton → stream a held-out trial over
gRPC frame by frame → correlation of the streamed predictions with the recorded responses, latency
p50/p99, and a figure (`stream.png`: traces and latency histogram). Everything lands under one
folder; stages already done (data, training, export) are reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from twinserve.contract import FPS, model_names
from twinserve.training.presets import DEMO_MAX_MINUTES, DEMO_STEPS

HELD_OUT_TIERS = ("live_test_main", "final_test_main", "oracle")


def held_out_trial(recording):
    """The first full trial with recorded responses from a test tier the trainer never saw."""
    for tier in HELD_OUT_TIERS:
        trials = [t for t in recording.load(tier) if t.responses is not None]
        if trials:
            return tier, max(trials, key=lambda t: t.frames)
    raise ValueError(f"{recording.path}: no held-out trial with responses")


def plot_stream(recorded: np.ndarray, streamed: np.ndarray, latencies_ms: np.ndarray, neurons: list[int],
                warmup: int, path: Path, title: str) -> None:
    """Recorded vs streamed traces (T, N) for a few neurons, and the per-frame latency histogram."""
    from twinserve.clients.plotting import pyplot

    plt = pyplot()

    figure, axes = plt.subplots(len(neurons) + 1, 1, figsize=(10, 1.8 * (len(neurons) + 1)), constrained_layout=True)
    time = np.arange(len(recorded)) / FPS
    for axis, neuron in zip(axes, neurons):
        axis.plot(time, recorded[:, neuron], color="0.6", lw=0.8, label="recorded")
        axis.plot(time[warmup:], streamed[warmup:, neuron], color="C3", lw=1.2, label="streamed twin")
        axis.set_ylabel(f"neuron {neuron}")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[0].set_title(title)
    axes[len(neurons) - 1].set_xlabel("time (s)")
    axes[-1].hist(latencies_ms, bins=50, color="C0")
    axes[-1].set_xlabel("per-frame round-trip latency (ms)")
    axes[-1].set_ylabel("frames")
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_demo(out: str | Path, steps: int = DEMO_STEPS, minutes: float = DEMO_MAX_MINUTES) -> dict:
    from twinserve.export.onnx_export import export_run
    from twinserve.serving.repository import write_repository
    from twinserve.serving.server import Ports, TritonServer
    from twinserve.training.data import Recording
    from twinserve.training.demo import run_training_demo
    from twinserve.training.metrics import pearson

    from twinserve.clients.stream import StreamClient

    out = Path(out)
    results = run_training_demo(out, steps=steps, minutes=minutes, stages=6)
    artifacts = out / "artifacts"
    if (artifacts / "manifest.json").is_file():
        say(f"[4/6] using the exported twin in {artifacts}")
    else:
        say(f"[4/6] exporting to {artifacts}")
        export_run(out / "run", artifacts)
    recording = Recording(sorted((out / "data").glob("virtual-mouse-*"))[0])
    tier, trial = held_out_trial(recording)
    ports = Ports.free()
    say(f"[5/6] serving with Triton (gRPC localhost:{ports.grpc})")
    write_repository(artifacts, out / "models")
    with TritonServer(out / "models", ports, log_path=out / "tritonserver.log") as server:
        say(f"[6/6] streaming {tier} trial {trial.index} ({trial.frames} frames) frame by frame")
        with StreamClient(server.url, model_names(recording.name)["stream"]) as client:
            streamed = np.stack(list(client.run(trial.video, trial.behavior, trial.pupil_center)))
            latency, warmup = client.latency_summary(), client.offset
            latencies_ms = np.asarray(client.latencies) * 1e3
    correlation = pearson(trial.responses[warmup:], streamed[warmup:])
    best = np.argsort(-np.nan_to_num(correlation, nan=-1))[:4].tolist()
    plot_stream(trial.responses, streamed, latencies_ms, best, warmup, out / "stream.png",
                f"{recording.name}, {tier} trial {trial.index}: streamed over gRPC vs recorded")
    summary = {"recording": recording.name, "tier": tier, "trial": trial.index, "frames": trial.frames,
               "warmup_frames": warmup, "correlation_mean": float(np.nanmean(correlation)), "latency": latency}
    (out / "stream.json").write_text(json.dumps(summary, indent=2))
    say(f"streamed {trial.frames} frames: correlation with the recorded responses {summary['correlation_mean']:.3f} "
          f"(mean over {len(correlation)} neurons, after {warmup} warm-up frames); latency p50 "
          f"{latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms")
    say(f"figures: {out / 'run' / 'traces.png'}, {out / 'stream.png'}")
    return {"training": results, "stream": summary}


def say(text: str) -> None:
    """Progress of the demo, on stderr (stdout carries the JSON result)."""
    print(text, file=sys.stderr, flush=True)


def _demo(args) -> dict:
    return run_demo(args.out, steps=args.steps, minutes=args.minutes)


def register(commands) -> None:
    demo = commands.add_parser("demo", help="the main job end to end: virtual mouse → train → export → serve → stream")
    demo.add_argument("--out", default="demo",
                      help="folder for data, run, artifacts and figures (done stages are reused)")
    demo.add_argument("--steps", type=int, default=DEMO_STEPS,
                      help=f"training steps (default: {DEMO_STEPS}: the same accuracy on a slow machine as a fast one)")
    demo.add_argument("--minutes", type=float, default=DEMO_MAX_MINUTES,
                      help=f"wall-clock cap on training (default: {DEMO_MAX_MINUTES:g})")
    demo.set_defaults(handler=_demo)
