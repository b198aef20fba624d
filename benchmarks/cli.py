"""`twin bench train|cores|fidelity|transfer|memory|gpu-train|export|stream|score|soak|experiments`: the benchmark subcommands.

`register` adds them to the `twin bench` subparsers; each handler runs its benchmark (imported only
then: the command line starts without torch), prints a summary to stderr and returns the results,
which `twin` prints as JSON on stdout. Results land in benchmarks/results/ unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twinserve.training.presets import PRESETS
from twinserve.training.virtual_mouse.family import OWN_TRAIN_MINUTES

from .harness import RESULTS
from .transfer import COHORT, MINUTES, NEW


def _minutes_or_own(text: str) -> float | str:
    """`--train-minutes`: a number of minutes or `OWN_TRAIN_MINUTES`."""
    if text == OWN_TRAIN_MINUTES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number of minutes nor {OWN_TRAIN_MINUTES!r}") from None


def _say(line: str) -> None:
    print(line, file=sys.stderr)


def _report(results: dict, lines, *written) -> dict:
    """Print a summary line per item of `lines` and the files written, on stderr → the results."""
    for line in lines:
        _say(line)
    _say(f"wrote {' and '.join(map(str, written))}")
    return results


def _train(args) -> dict:
    from .train import run_bench

    results = run_bench(args.out, presets=args.presets, repeats=args.repeats, contiguous=args.contiguous_input)
    return _report(results, (f"{preset:<6} train {r['train_output_frames_per_s']:8.0f} output frames/s  "
                             f"inference {r['inference_output_frames_per_s']:8.0f} output frames/s  "
                             f"({r['parameters']} parameters)" for preset, r in results["presets"].items()), args.out)


def _cores(args) -> dict:
    from .cores import run_bench

    results = run_bench(args.out, presets=args.presets, minutes=args.minutes, data=args.data, progress=not args.quiet)
    return _report(results, (f"{preset:<10} {r['core']:<12} {r['steps']:6d} steps in {r['training_minutes']:5.1f} min  "
                             f"oracle single-trial correlation {r['oracle_single_trial_correlation']:.3f}"
                             for preset, r in results["presets"].items()), args.out, Path(args.out).with_suffix(".png"))


def _fidelity(args) -> dict:
    from .fidelity import lines, run_bench

    results = run_bench(args.out, members=args.members, preset=args.preset, minutes=args.minutes,
                        neurons=args.neurons, train_minutes=args.train_minutes, recordings=args.recordings,
                        workdir=args.workdir, experiments=not args.skip_experiments, progress=not args.quiet)
    return _report(results, lines(results), args.out, Path(args.out).with_suffix(".png"))


def _transfer(args) -> dict:
    from .transfer import run_bench

    results = run_bench(args.out, args.workdir, preset=args.preset, cohort=args.cohort, new=args.new,
                        minutes=args.minutes, neurons=args.neurons, cohort_minutes=args.cohort_minutes,
                        core_steps=args.core_steps, core_wall_minutes=args.core_wall_minutes, steps=args.steps,
                        head_steps=args.head_steps, jobs=args.jobs, device=args.device, workers=args.workers,
                        progress=not args.quiet)
    summary = results["summary"]
    lines = [f"{name:<12}{mode:<10}" + "  ".join(f"{m:>4} min {value:.3f}" for m, value in points.items())
             for name, modes in summary["fraction_of_ceiling"].items() for mode, points in modes.items()]
    lines.append(f"transfer beats scratch at 4 minutes on every new mouse: {summary['transfer_beats_scratch_at_4_minutes']}; "
                 f"transfer at 4 reaches scratch at 16: {summary['transfer_at_4_reaches_scratch_at_16']}")
    return _report(results, ["oracle fraction of ceiling"] + lines, args.out, Path(args.out).with_suffix(".png"))


def _memory(args) -> dict:
    from .memory import run_bench

    results = run_bench(args.out, args.workdir, neurons=args.neurons, recordings=args.recordings,
                        small_minutes=args.small_minutes, steps=args.steps, speed_steps=args.speed_steps,
                        repeats=args.repeats, preset=args.preset, progress=not args.quiet)
    memory, speed = results["memory"], results["speed"]
    return _report(results, [f"{size}: {memory[size]['data_bytes'] / 1e9:6.1f} GB of data, peak PSS "
                             f"{memory[size]['peak_pss_bytes'] / 1e9:5.2f} GB" for size in ("small", "large")]
                   + [f"peak ratio {memory['peak_ratio']:.2f}; out-of-core steps/s {speed['disk_vs_memory']:.2f}x "
                      f"in-memory; targets {results['targets_met']}"], args.out, Path(args.out).with_suffix(".png"))


def _gpu_train(args) -> dict:
    from .gpu_train import run_bench

    results = run_bench(args.out, preset=args.preset, steps=args.steps, device=args.device, precision=args.precision,
                        neurons=args.neurons, recordings=args.recordings, progress=not args.quiet)
    peak = results["machine"]["gpu"].get("peak_allocated_bytes")
    return _report(results, [f"{args.preset} on {results['config']['device']} ({results['config']['precision']}): "
                             f"{results['steps_per_s']:.2f} steps/s, {results['training_frames_per_s']:.0f} training "
                             f"frames/s, peak GPU memory {peak / 2**30:.2f} GiB" if peak else
                             f"{args.preset} on {results['config']['device']}: {results['steps_per_s']:.2f} steps/s"],
                   args.out)


def _export(args) -> dict:
    from .export import run_bench

    results = run_bench(args.out, presets=args.presets, neurons=args.neurons)
    for preset, result in results["presets"].items():
        _say(f"{preset} (receptive field {result['receptive_field']}, "
             f"state {result['state_bytes_per_stream'] / 1e6:.1f} MB per stream)")
        for name, path in result["paths"].items():
            _say(f"  {name:<28}{path['output_frames_per_s']:9.1f} output frames/s  {path['gflops']:6.1f} GFLOP/s "
                 f"({100 * path['fraction_of_matmul_rate']:.0f}% of matmul, spread {100 * path['spread']:.0f}%)")
        for name, reason in result.get("skipped", {}).items():
            _say(f"  {name:<28}skipped: {reason}")
        for name, value in result["ratios"].items():
            _say(f"  {name:<40}{value:6.2f}")
    return _report(results, (), args.out)


def _stream(args) -> dict:
    from .stream import run_bench

    results = run_bench(args.out, presets=args.presets, neurons=args.neurons, frames=args.frames)
    for preset, result in results["presets"].items():
        for source in ("client", "client_copying", "perf_analyzer"):
            for row in result[source]:
                text = row.get("error", "")[:100] or (f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                                                      f"{row['frames_per_s']:7.1f} frames/s")
                _say(f"{preset:<10}{source:<16}{row['streams']:>3} streams  {text}")
        for path in ("realtime", "realtime_copying"):
            realtime = result[path]
            _say(f"{preset:<10}{path:<16}streams with p99 < {realtime['p99_budget_ms']:.0f} ms: "
                 f"{realtime['max_streams_at_30fps']} (searches: "
                 f"{[run['max_streams_at_30fps'] for run in realtime['runs']]})")
    return _report(results, (), args.out)


def _score(args) -> dict:
    from .score import run_bench

    results = run_bench(args.out, preset=args.preset, neurons=args.neurons, stimuli=args.stimuli)
    return _report(results, [f"local ONNX Runtime {results['local_onnxruntime']['frames_per_s']:.0f} frames/s, twin "
                             f"score via Triton {results['twin_score_via_triton']['frames_per_s']:.0f} frames/s: "
                             f"{results['server_over_local']:.2f} (target ≥ {results['target']})"], args.out)


def _soak(args) -> dict:
    from .soak import run_bench

    results = run_bench(args.out, minutes=args.minutes, streams=args.streams, preset=args.preset,
                        neurons=args.neurons, kills=args.kills, seed=args.seed)
    s, c, server, rss = results["streams"], results["clips"], results["server"], results["rss"]
    growth = "n/a" if rss["growth"] is None else f"{100 * rss['growth']:+.1f}%"
    return _report(results, [f"streams: {s['frames_sent']} frames sent, {s['frames_answered']} answered, {s['wrong']} "
                             f"wrong, {s['lost']} lost, {s['refused_expected']} refused as expected, "
                             f"{s['refused_unexpected']} unexpectedly ({s['reconnects']} reconnects)",
                             f"clips: {c['clips_sent']} sent, {c['clips_answered']} answered, "
                             f"{c['clips_wrong']} wrong, {c['clips_lost']} lost, {c['clips_refused']} refused",
                             f"server: {server['kills']} kills, {server['restarts']} restarts, "
                             f"{len(server['tritonservers_left'])} tritonservers left after stop; RSS max "
                             f"{rss['max_mb']:.0f} MB, growth after warm-up {growth}",
                             "passed" if results["passed"] else "FAILED"],
                   args.out, Path(args.out).with_suffix(".png"))


def _experiments(args) -> dict:
    from .experiments import lines, run_bench

    results = run_bench(args.out, neurons=args.neurons, preset=args.preset, sample=args.sample,
                        progress=not args.quiet)
    return _report(results, lines(results), args.out)


def register(benchmarks) -> None:
    """Add the benchmark subcommands to `benchmarks`, the subparsers of `twin bench`."""
    presets = sorted(PRESETS)
    train = benchmarks.add_parser("train", help="training and inference throughput of the presets")
    train.add_argument("--out", default=f"{RESULTS}/train.json")
    train.add_argument("--repeats", type=int, default=3)
    train.add_argument("--presets", nargs="+", default=["tiny", "small", "base"], choices=presets)
    train.add_argument("--contiguous-input", nargs="*", default=[], choices=presets, metavar="PRESET",
                       help="factorized presets measured again with the core's input in the default layout, "
                            "not channels-last: the layout's speed-up")
    train.set_defaults(handler=_train)

    cores = benchmarks.add_parser("cores", help="convolutional, transformer and recurrent twins at equal training wall time")
    cores.add_argument("--out", default=f"{RESULTS}/cores.json")
    cores.add_argument("--presets", nargs="+", default=["small", "vit-small", "gru-small", "fnn-small"], choices=presets)
    cores.add_argument("--minutes", type=float, default=8.0, help="training wall time per preset")
    cores.add_argument("--data", nargs="+", help="recording folders (default: the demo's virtual mouse)")
    cores.add_argument("--quiet", action="store_true")
    cores.set_defaults(handler=_cores)

    fidelity = benchmarks.add_parser("fidelity", help="train, serve and probe twins of held-out virtual mice: "
                                                      "fraction of the ceiling, tuning and RF errors vs truth")
    fidelity.add_argument("--out", default=f"{RESULTS}/fidelity.json")
    fidelity.add_argument("--members", nargs="+", metavar="NAME",
                          help="family members, 'default' or 'family-<seed>' (default: the first 6 held-out seeds, "
                               "family-100 … family-105)")
    fidelity.add_argument("--preset", default="small", choices=presets)
    fidelity.add_argument("--minutes", type=float, default=15.0, help="training wall time per member")
    fidelity.add_argument("--neurons", type=int, default=500, help="neurons of a member's first recording")
    fidelity.add_argument("--train-minutes", type=_minutes_or_own, default=10.0,
                          help=f"minutes of training movies per recording, or {OWN_TRAIN_MINUTES!r}: each member's own (5-60)")
    fidelity.add_argument("--recordings", type=int, default=1, help="recordings per member")
    fidelity.add_argument("--workdir", help="folder for data, runs and servers, kept (a rerun reuses members done); "
                                            "default: a temporary folder")
    fidelity.add_argument("--skip-experiments", action="store_true",
                          help="no export, server or in-silico experiments: training fidelity only")
    fidelity.add_argument("--quiet", action="store_true", help="no progress bars (one line per phase stays)")
    fidelity.set_defaults(handler=_fidelity)

    transfer = benchmarks.add_parser("transfer", help="a core trained on a cohort of virtual mice, frozen, with heads "
                                                      "fitted on 2-16 minutes of new mice, against twins from scratch")
    transfer.add_argument("--out", default=f"{RESULTS}/transfer.json")
    transfer.add_argument("--workdir", required=True, help="folder for the recordings and runs (kept; finished runs "
                                                           "are reused, so an interrupted bench resumes)")
    transfer.add_argument("--preset", default="small", choices=presets)
    transfer.add_argument("--cohort", type=int, nargs="+", default=list(COHORT),
                          help="family members (seeds) whose recordings train the core")
    transfer.add_argument("--new", type=int, nargs="+", default=list(NEW), help="family members the core moves to")
    transfer.add_argument("--minutes", type=float, nargs="+", default=list(MINUTES),
                          help="minutes of each new mouse's training data to fit on")
    transfer.add_argument("--neurons", type=int, default=400, help="neurons per recording")
    transfer.add_argument("--cohort-minutes", type=float, default=12.0, help="training minutes per cohort recording")
    transfer.add_argument("--core-steps", type=int, default=1000, help="steps of the cohort's twin")
    transfer.add_argument("--core-wall-minutes", type=float, help="a wall-time budget of the cohort's twin besides "
                                                                  "its steps (default: none; the steps decide)")
    transfer.add_argument("--steps", type=int, default=600, help="steps of every new mouse's twin from scratch")
    transfer.add_argument("--head-steps", type=int, help="steps of every transferred twin (its head only, on the "
                                                         "frozen core's cached features; default: --steps)")
    transfer.add_argument("--jobs", type=int, default=2, help="recordings written and new mice's twins trained at "
                                                               "once (default 2: one core each here); the runs take "
                                                               "the same steps either way")
    transfer.add_argument("--device", default="auto", help="every run's `twin train --device` (auto: a CUDA GPU "
                                                           "where there is one)")
    transfer.add_argument("--workers", type=int, default=1, help="every run's `twin train --workers`: processes "
                                                                 "that read its training windows")
    transfer.add_argument("--quiet", action="store_true")
    transfer.set_defaults(handler=_transfer)

    memory = benchmarks.add_parser("memory", help="peak memory of twin train on data sets 8x apart (out of core), "
                                                  "and out-of-core vs in-memory training speed")
    memory.add_argument("--out", default=f"{RESULTS}/memory.json")
    memory.add_argument("--workdir", required=True, help="folder for the data sets and runs (kept and reused; the "
                                                         "large set takes recordings x large-minutes of disk)")
    memory.add_argument("--neurons", type=int, default=7900, help="neurons per recording")
    memory.add_argument("--recordings", type=int, default=2)
    memory.add_argument("--small-minutes", type=float, default=20.0,
                        help="training minutes per recording of the small set; the large set has as many as make "
                             "it 8x the size (~190 for 20)")
    memory.add_argument("--steps", type=int, default=20, help="training steps of the memory runs")
    memory.add_argument("--speed-steps", type=int, default=60, help="training steps of each speed run")
    memory.add_argument("--repeats", type=int, default=3, help="speed runs per loader, interleaved")
    memory.add_argument("--preset", default="small", choices=presets)
    memory.add_argument("--quiet", action="store_true")
    memory.set_defaults(handler=_memory)

    gpu = benchmarks.add_parser("gpu-train", help="a few hundred training steps on a GPU (make gpu-check): steps/s, "
                                                  "frames/s, peak GPU memory")
    gpu.add_argument("--out", default=f"{RESULTS}/gpu_train.json")
    gpu.add_argument("--preset", default="base", choices=presets)
    gpu.add_argument("--steps", type=int, default=300)
    gpu.add_argument("--device", default="cuda", help="cuda, cuda:<i>, or cpu to check the script")
    gpu.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    gpu.add_argument("--neurons", type=int, default=1000, help="neurons of the first recording")
    gpu.add_argument("--recordings", type=int, default=2)
    gpu.add_argument("--quiet", action="store_true")
    gpu.set_defaults(handler=_gpu_train)

    export = benchmarks.add_parser("export", help="clip, step and window re-run throughput (PyTorch vs ONNX Runtime)")
    export.add_argument("--out", default=f"{RESULTS}/export.json")
    export.add_argument("--presets", nargs="+", default=["base", "vit-base"], choices=presets)
    export.add_argument("--neurons", type=int, default=8000)
    export.set_defaults(handler=_export)

    stream = benchmarks.add_parser("stream", help="streaming latency through Triton: own client and perf_analyzer")
    stream.add_argument("--out", default=f"{RESULTS}/stream.json")
    stream.add_argument("--presets", nargs="+", default=["small", "base"], choices=presets)
    stream.add_argument("--neurons", type=int, default=8000)
    stream.add_argument("--frames", type=int, default=150, help="frames per stream in the closed-loop runs")
    stream.set_defaults(handler=_stream)

    score = benchmarks.add_parser("score", help="twin score through Triton vs the clip graph run locally")
    score.add_argument("--out", default=f"{RESULTS}/score.json")
    score.add_argument("--preset", default="small", choices=presets)
    score.add_argument("--neurons", type=int, default=8000)
    score.add_argument("--stimuli", type=int, default=24)
    score.set_defaults(handler=_score)

    soak = benchmarks.add_parser("soak", help="streams, clips and tritonserver kills for minutes; every answer checked")
    soak.add_argument("--out", default=f"{RESULTS}/soak.json")
    soak.add_argument("--minutes", type=float, default=20.0)
    soak.add_argument("--streams", type=int, default=8, help="concurrent stream workers at 30 fps")
    soak.add_argument("--preset", default="small", choices=presets)
    soak.add_argument("--neurons", type=int, default=1000)
    soak.add_argument("--kills", type=int,
                      help="tritonserver kills, after the first minute (default max(1, minutes // 5))")
    soak.add_argument("--seed", type=int, default=0)
    soak.set_defaults(handler=_soak)

    experiments = benchmarks.add_parser("experiments", help="twin experiment tuning and rf on a served twin of "
                                                            "thousands of neurons: wall time, scoring vs fits, "
                                                            "batched vs per-neuron scipy fits")
    experiments.add_argument("--out", default=f"{RESULTS}/experiments.json")
    experiments.add_argument("--neurons", type=int, default=8000)
    experiments.add_argument("--preset", default="small", choices=presets)
    experiments.add_argument("--sample", type=int, default=200, help="neurons whose fits scipy redoes one by one")
    experiments.add_argument("--quiet", action="store_true")
    experiments.set_defaults(handler=_experiments)
