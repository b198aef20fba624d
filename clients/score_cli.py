"""`twin score`: a stimulus library through a served clip model into a Zarr store (resumable)."""

from __future__ import annotations

import json

from twinserve.training.presets import PRESETS


def _score(args) -> int:
    from .score import score

    summary = score(args.url, args.model, args.library, args.out, in_flight=args.in_flight,
                    on_error=args.on_error, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _stimuli(args) -> int:
    from .library import save_library
    from .stimuli import SETS

    stimuli, parameters = SETS[args.kind]()
    save_library(args.out, stimuli, parameters)
    frames = sum(len(v) for v in stimuli.values())
    print(f"wrote {len(stimuli)} {args.kind} stimuli ({frames} frames) and parameters.json to {args.out}")
    return 0


def _bench(args) -> int:
    from .score_bench import run_bench

    results = run_bench(args.out, preset=args.preset, neurons=args.neurons, stimuli=args.stimuli)
    print(f"local ONNX Runtime {results['local_onnxruntime']['frames_per_s']:.0f} frames/s, twin score via Triton "
          f"{results['twin_score_via_triton']['frames_per_s']:.0f} frames/s: {results['server_over_local']:.2f} "
          f"(target ≥ {results['target']})")
    print(f"wrote {args.out}")
    return 0


def register(commands, benchmarks) -> None:
    score = commands.add_parser("score", help="score a stimulus library through a served twin (resumable)")
    score.add_argument("--url", default="localhost:8001", help="Triton gRPC address")
    score.add_argument("--model", required=True, help="clip model, e.g. <recording>_clip")
    score.add_argument("--library", required=True, help="folder of .npy/.npz/video files, or an .h5 file")
    score.add_argument("--out", required=True, help="Zarr store; an existing one of the same run is resumed")
    score.add_argument("--in-flight", type=int, default=4, help="requests kept in flight (fills dynamic batching)")
    score.add_argument("--on-error", choices=["skip", "stop"], default="skip",
                       help="an unreadable or refused stimulus: record it and go on, or stop")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=_score)

    stimuli = commands.add_parser("stimuli", help="write a standard stimulus set as a library for `twin score`")
    stimuli.add_argument("kind", choices=["gratings", "gabors", "monet", "dots", "kinematograms"])
    stimuli.add_argument("--out", required=True, help="library folder")
    stimuli.set_defaults(handler=_stimuli)

    bench = benchmarks.add_parser("score", help="twin score through Triton vs the clip graph run locally")
    bench.add_argument("--out", default="benchmarks/results/score.json")
    bench.add_argument("--preset", default="small", choices=sorted(PRESETS))
    bench.add_argument("--neurons", type=int, default=8000)
    bench.add_argument("--stimuli", type=int, default=24)
    bench.set_defaults(handler=_bench)
