"""Subcommands of `twin` for data, training and evaluation (imports torch only when run)."""

from __future__ import annotations

from pathlib import Path

from .presets import PRESETS


def _synth(args) -> None:
    from .virtual_mouse import synthesize

    paths = synthesize(args.out, recordings=args.recordings, neurons=args.neurons,
                       train_minutes=args.train_minutes, seed=args.seed, progress=not args.quiet)
    for path in paths:
        print(path)


def _train(args) -> None:
    from .train import train

    overrides = {k: v for k, v in [("minutes", args.minutes), ("steps", args.steps), ("seed", args.seed)]
                 if v is not None}
    results = train(args.data, args.out, preset=args.preset, progress=not args.quiet, **overrides)
    print_metrics(results)


def _evaluate(args) -> None:
    from .checkpoint import load_run, write_json
    from .data import open_recordings
    from .evaluate import evaluate

    model, _ = load_run(args.run)
    results = evaluate(model, open_recordings(args.data), progress=not args.quiet)
    if args.out:
        write_json(Path(args.out), results)
    print_metrics(results)


def _bench(args) -> None:
    from .bench import run_bench

    results = run_bench(args.out, repeats=args.repeats)
    for preset, r in results["presets"].items():
        print(f"{preset:<6} train {r['train_output_frames_per_s']:8.0f} output frames/s  "
              f"inference {r['inference_output_frames_per_s']:8.0f} output frames/s  ({r['parameters']} parameters)")
    print(f"wrote {args.out}")


def _cores_bench(args) -> None:
    from .cores_bench import run_cores_bench

    results = run_cores_bench(args.out, presets=args.presets, minutes=args.minutes, data=args.data,
                              progress=not args.quiet)
    for preset, r in results["presets"].items():
        print(f"{preset:<10} {r['core']:<12} {r['steps']:6d} steps in {r['training_minutes']:5.1f} min  "
              f"oracle single-trial correlation {r['oracle_single_trial_correlation']:.3f}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


def print_metrics(results: dict) -> None:
    """One line per recording and tier with the summary metrics."""
    names = ["single_trial_correlation", "correlation_to_average", "fev_e", "cc_norm",
             "ceiling_single_trial_correlation", "fraction_of_ceiling"]
    short = ["single", "to_avg", "fev_e", "cc_norm", "ceiling", "of_ceil"]
    print(f"{'recording':<22}{'tier':<18}" + "".join(f"{s:>9}" for s in short))
    for recording, tiers in results.items():
        for tier, summary in tiers.items():
            values = "".join(f"{summary[n]:>9.3f}" if n in summary else f"{'-':>9}" for n in names)
            print(f"{recording:<22}{tier:<18}{values}")


def register(commands, benchmarks) -> None:
    data = commands.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write virtual-mouse recordings in the SENSORIUM 2023 layout")
    synth.add_argument("--out", required=True, help="folder to write one sub-folder per recording into")
    synth.add_argument("--recordings", type=int, default=2)
    synth.add_argument("--neurons", type=int, default=300, help="neurons of the first recording")
    synth.add_argument("--train-minutes", type=float, default=6.0, help="minutes of training movies per recording")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--quiet", action="store_true")
    synth.set_defaults(handler=_synth)

    train = commands.add_parser("train", help="train a twin on recordings")
    train.add_argument("--data", nargs="+", required=True, help="recording folders")
    train.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    train.add_argument("--preset", default="small", choices=sorted(PRESETS))
    train.add_argument("--minutes", type=float, help="wall-time budget (default: the preset's)")
    train.add_argument("--steps", type=int, help="optimizer-step budget (default: the preset's)")
    train.add_argument("--seed", type=int)
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained twin per recording and tier")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--data", nargs="+", required=True, help="recording folders")
    evaluate.add_argument("--out", help="write the metrics as JSON here")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(handler=_evaluate)


    train_bench = benchmarks.add_parser("train", help="training and inference throughput of the presets")
    train_bench.add_argument("--out", default="benchmarks/results/train.json")
    train_bench.add_argument("--repeats", type=int, default=3)
    train_bench.set_defaults(handler=_bench)

    cores = benchmarks.add_parser("cores", help="convolutional vs transformer twin at equal training wall time")
    cores.add_argument("--out", default="benchmarks/results/cores.json")
    cores.add_argument("--presets", nargs="+", default=["small", "vit-small"], choices=sorted(PRESETS))
    cores.add_argument("--minutes", type=float, default=10.0, help="training wall time per preset")
    cores.add_argument("--data", nargs="+", help="recording folders (default: the demo's virtual mouse)")
    cores.add_argument("--quiet", action="store_true")
    cores.set_defaults(handler=_cores_bench)
