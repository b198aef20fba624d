"""`twin experiment ...`: in-silico experiments on a served twin (`mei`, on the local PyTorch twin, is
registered by the training room). Summaries as JSON on stdout, prose on stderr."""

from __future__ import annotations

import sys

from ..connection import Connection, add_arguments


def _tuning(args) -> dict:
    from .tuning import run_tuning

    summary = run_tuning(Connection.from_args(args), args.model, args.out, truth=args.truth, progress=not args.quiet)
    print(f"wrote {args.out}/tuning.npz, tuning.json, tuning_curves.png"
          + (", tuning_vs_truth.png" if args.truth else ""), file=sys.stderr)
    return summary


def _rf(args) -> dict:
    from .rf import run_rf

    summary = run_rf(Connection.from_args(args), args.model, args.out, truth=args.truth, progress=not args.quiet)
    print(f"wrote {args.out}/rf.npz, rf.json, rf_gallery.png" + (", rf_vs_truth.png" if args.truth else ""),
          file=sys.stderr)
    return summary


def _optimize(args) -> dict:
    from .optimize import run_optimize

    summary = run_optimize(Connection.from_args(args), args.model, args.neuron, args.out, budget=args.budget,
                           population=args.population, contrast=args.contrast, seed=args.seed, progress=not args.quiet)
    print(f"wrote {args.out}/optimize.json, optimize_log.json, best_stimulus.npy, optimize.png", file=sys.stderr)
    return summary


def _common(parser, truth: bool = True) -> None:
    add_arguments(parser)
    parser.add_argument("--model", required=True, help="clip model, e.g. <recording>_clip")
    parser.add_argument("--out", required=True, help="folder for stimuli, responses, numbers and figures")
    if truth:
        parser.add_argument("--truth", help="virtual-mouse recording folder: compare with its ground truth")
    parser.add_argument("--quiet", action="store_true")


def register(commands):
    """Add `twin experiment`; → its subparsers, for experiments registered elsewhere."""
    experiment = commands.add_parser("experiment", help="in-silico experiments on a served twin")
    kinds = experiment.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    tuning = kinds.add_parser("tuning",
                              help="orientation/direction tuning from drifting gratings (OSI, DSI, von Mises)")
    _common(tuning)
    tuning.set_defaults(handler=_tuning)
    rf = kinds.add_parser("rf", help="receptive fields from flashing dots (STA, SSI, 2D Gaussian centre)")
    _common(rf)
    rf.set_defaults(handler=_rf)
    optimize = kinds.add_parser("optimize", help="closed-loop CMA-ES search for the most exciting Gabor patch")
    _common(optimize, truth=False)
    optimize.add_argument("--neuron", type=int, nargs="+", required=True, help="neuron index (or several: a group)")
    optimize.add_argument("--budget", type=int, default=2000, help="queries at most")
    optimize.add_argument("--population", type=int, default=16, help="candidates per generation")
    optimize.add_argument("--contrast", type=float, default=1.0, help="contrast budget, (0, 1]")
    optimize.add_argument("--seed", type=int, default=0)
    optimize.set_defaults(handler=_optimize)
    return kinds
