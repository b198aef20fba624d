"""Subcommands of `twin` for data, training, evaluation and the MEI experiment (imports torch only when run).

Handlers return their result (printed as JSON on stdout by `twinserve.cli`); tables go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .presets import PRESETS


def _synth(args) -> list[str]:
    from .virtual_mouse import synthesize
    from .virtual_mouse.family import variant
    from .virtual_mouse.writer import SCALES

    member = variant(args.variant)
    size = SCALES.get(args.scale, {"neurons": member.neurons, "train_minutes": member.train_minutes,
                                   "neuron_step": 0.15})
    neurons = size["neurons"] if args.neurons is None else args.neurons
    minutes = size["train_minutes"] if args.train_minutes is None else args.train_minutes
    paths = synthesize(args.out, recordings=args.recordings, neurons=neurons, train_minutes=minutes,
                       seed=args.seed, progress=not args.quiet, variant=member, neuron_step=size["neuron_step"],
                       expected=args.expected, workers=args.workers)
    return [str(path) for path in paths]


def _torchrun(args) -> list[str]:
    """The torchrun command that runs this `twin train` in `args.nproc` processes on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               "-m", "twinserve.cli", "train", "--data", *args.data, "--out", args.out, "--preset", args.preset,
               "--device", args.device, "--loader", args.loader, "--workers", str(args.workers)]
    for flag in ("minutes", "steps", "precision", "seed", "data_minutes", "refit_readout_at", "core_from",
                 "feature_cache_gb"):
        if getattr(args, flag) is not None:
            command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return command + (["--quiet"] if args.quiet else []) + (["--freeze-core"] if args.freeze_core else [])


def _train(args) -> dict:
    import os
    import subprocess

    from .train import train

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        done = subprocess.run(_torchrun(args), stdout=subprocess.DEVNULL)  # the metrics are printed once, here
        if done.returncode:
            raise SystemExit(done.returncode)
        return json.loads((Path(args.out) / "metrics.json").read_text())

    overrides = {k: v for k, v in [("minutes", args.minutes), ("steps", args.steps), ("seed", args.seed),
                                   ("precision", args.precision), ("data_minutes", args.data_minutes),
                                   ("refit_readout_at", args.refit_readout_at)] if v is not None}
    if args.feature_cache_gb is not None:
        overrides["feature_cache_gb"] = args.feature_cache_gb
    results = train(args.data, args.out, preset=args.preset, progress=not args.quiet, device=args.device,
                    loader=args.loader, workers=args.workers, core_from=args.core_from,
                    freeze_core=args.freeze_core, **overrides)
    print_metrics(results)
    return results


def _evaluate(args) -> dict:
    from .checkpoint import load_run, write_json
    from .data import open_recordings
    from .evaluate import evaluate

    from .distributed import resolve_device

    model, _ = load_run(args.run)
    results = evaluate(model.to(resolve_device(args.device)), open_recordings(args.data), progress=not args.quiet)
    if args.out:
        write_json(Path(args.out), results)
    print_metrics(results, official=args.official)
    return results


def _mei(args) -> dict:
    from .mei import run_mei

    summary = run_mei(args.run, args.recording, args.neuron, args.out, steps=args.steps, rms=args.rms,
                      smooth_px=args.smooth, seed=args.seed, progress=not args.quiet, device=args.device)
    print(f"wrote {args.out}/mei.npy, mei.json, mei.png", file=sys.stderr)
    return summary


def print_metrics(results: dict, official: bool = False) -> None:
    """One line per recording and tier with the summary metrics, on stderr; with `official`, the
    official scorer's correlations (`*_official`, marked *) beside ours."""
    names = ["single_trial_correlation", "correlation_to_average", "fev_e", "cc_norm",
             "ceiling_single_trial_correlation", "fraction_of_ceiling"]
    short = ["single", "to_avg", "fev_e", "cc_norm", "ceiling", "of_ceil"]
    if official:
        names[2:2] = ["single_trial_correlation_official", "correlation_to_average_official"]
        short[2:2] = ["single*", "to_avg*"]
    print(f"{'recording':<22}{'tier':<18}" + "".join(f"{s:>9}" for s in short), file=sys.stderr)
    for recording, tiers in results.items():
        for tier, summary in tiers.items():
            values = "".join(f"{summary[n]:>9.3f}" if n in summary else f"{'-':>9}" for n in names)
            print(f"{recording:<22}{tier:<18}{values}", file=sys.stderr)
    if official:
        print("* official: neuralpredictors' corr (std + 1e-8), a neuron without variance counts as 0", file=sys.stderr)


def _seed_and_quiet(parser, default_seed: int | None) -> None:
    parser.add_argument("--seed", type=int, default=default_seed,
                        help="random seed" + (" (default: the preset's)" if default_seed is None else ""))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(commands) -> None:
    data = commands.add_parser("data", help="data sets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write virtual-mouse recordings in the SENSORIUM 2023 layout")
    synth.add_argument("--out", required=True, help="folder to write one sub-folder per recording into")
    synth.add_argument("--recordings", type=int, default=2)
    synth.add_argument("--variant", default="default",
                       help="which virtual mouse: 'default' (the original) or 'family-<k>', member k of the family "
                            "of virtual mice (every generative choice drawn per member; see truth/variant.json)")
    synth.add_argument("--scale", choices=("variant", "sensorium"), default="variant",
                       help="recording size: the variant's (default; 300 neurons, 6 minutes, +15%% neurons per "
                            "recording), or 'sensorium': SENSORIUM 2023's ~7,900 neurons (+1%% per recording) and "
                            "60 minutes of training video (~4.8 GB of responses, 1.4 GB of video per recording); "
                            "--neurons and --train-minutes override either")
    synth.add_argument("--neurons", type=int, help="neurons of the first recording (default: the scale's)")
    synth.add_argument("--train-minutes", type=float, help="minutes of training movies per recording "
                                                           "(default: the scale's)")
    synth.add_argument("--expected", choices=("all", "test", "none"), default="all",
                       help="which trials get truth/expected/ (as large as the responses): all (default), "
                            "test (all but the train tier: what `twin evaluate` reads), or none")
    synth.add_argument("--workers", type=int, default=1,
                       help="recordings written at once, one process each (default 1; 2 uses both cores here); "
                            "the files do not depend on it")
    _seed_and_quiet(synth, default_seed=0)
    synth.set_defaults(handler=_synth)

    train = commands.add_parser("train", help="train a twin on recordings")
    train.add_argument("--data", nargs="+", required=True, help="recording folders")
    train.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    train.add_argument("--preset", default="small", choices=sorted(PRESETS))
    train.add_argument("--minutes", type=float, help="wall-time budget (default: the preset's)")
    train.add_argument("--steps", type=int, help="optimizer-step budget (default: the preset's)")
    train.add_argument("--precision", choices=("auto", "bf16", "fp32"),
                       help="bf16 autocast with fp32 master weights, or fp32; auto (default): bf16 on CUDA, "
                            "fp32 on CPUs (where bf16 learned worse and was not faster)")
    train.add_argument("--device", default="auto", help="auto (default: a GPU where CUDA is available), cpu, cuda, "
                       "cuda:<i>; under torchrun each process takes its local rank's GPU")
    train.add_argument("--nproc", type=int, default=1,
                       help="data-parallel processes on this machine (runs torchrun; one GPU each, or gloo on CPUs)")
    train.add_argument("--loader", default="disk", choices=("disk", "memory"),
                       help="disk (default): windows read from memory-mapped files when sampled, in background "
                            "workers (recordings larger than RAM); memory: load the training trials first")
    train.add_argument("--workers", type=int, default=1, help="background processes reading windows (--loader disk); "
                       "0 reads in the training process")
    train.add_argument("--data-minutes", type=float,
                       help="train on the first this many minutes of each recording's training trials (default: all)")
    train.add_argument("--refit-readout-at", type=float, metavar="FRACTION",
                       help="once this fraction of the budget is spent, move every neuron whose readout reads from "
                            "the wrong place on the core trained so far to the grid cell whose features explain it "
                            "best, and every weak neuron far from the retinotopic map of the others to that map; the "
                            "others keep their trained readout, in every recording (default: at 0.3 in the "
                            "recordings whose starting positions their neurons' coordinates did not confirm, never in "
                            "the others)")
    train.add_argument("--core-from", metavar="RUN",
                       help="start from the core (settings and weights) of this trained run instead of the preset's; "
                            "--preset then gives the training settings only. The run records the core's sha256")
    train.add_argument("--freeze-core", action="store_true",
                       help="with --core-from: keep the core fixed and fit only the new recordings' heads "
                            "(normalisation, shifter, readout, behavioural modulator): the foundation workflow")
    train.add_argument("--feature-cache-gb", type=float, metavar="GB",
                       help="with --freeze-core: the most memory the frozen core's features of the training and "
                            "validation trials may take, computed once so that each step runs only the heads "
                            "(default 6; 0: never); past it every step runs the core")
    _seed_and_quiet(train, default_seed=None)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="metrics of a trained twin per recording and tier")
    evaluate.add_argument("--run", required=True)
    evaluate.add_argument("--data", nargs="+", required=True, help="recording folders")
    evaluate.add_argument("--out", help="write the metrics as JSON here")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<i>")
    evaluate.add_argument("--official", action="store_true",
                          help="print the official SENSORIUM scorer's correlations beside ours (neuralpredictors' "
                               "corr: std + 1e-8, a neuron without variance counts as 0, where ours leaves it out); "
                               "the metrics JSON holds both either way")
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(handler=_evaluate)


def register_experiments(kinds) -> None:
    """`twin experiment mei`: most exciting inputs by gradient ascent on the local PyTorch twin."""
    mei = kinds.add_parser("mei", help="most exciting inputs by gradient ascent on the local PyTorch twin")
    mei.add_argument("--run", required=True, help="run folder written by `twin train`")
    mei.add_argument("--recording", required=True)
    mei.add_argument("--neuron", type=int, nargs="+", required=True, help="one MEI per neuron, optimised together")
    mei.add_argument("--out", required=True)
    mei.add_argument("--steps", type=int, default=200)
    mei.add_argument("--rms", type=float, default=40.0, help="norm budget: RMS deviation from grey, pixel values")
    mei.add_argument("--smooth", type=float, default=1.0, help="gradient smoothing, pixels")
    mei.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:<i>")
    _seed_and_quiet(mei, default_seed=0)
    mei.set_defaults(handler=_mei)
