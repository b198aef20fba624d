"""`twin experiment ...`: in-silico experiments on a served twin."""

from __future__ import annotations

import json


def _tuning(args) -> int:
    from .tuning import run_tuning

    summary = run_tuning(args.url, args.model, args.out, truth=args.truth, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/tuning.npz, tuning.json, tuning_curves.png"
          + (", tuning_vs_truth.png" if args.truth else ""))
    return 0


def _rf(args) -> int:
    from .rf import run_rf

    summary = run_rf(args.url, args.model, args.out, truth=args.truth, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}/rf.npz, rf.json, rf_gallery.png" + (", rf_vs_truth.png" if args.truth else ""))
    return 0


def _common(parser) -> None:
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC address")
    parser.add_argument("--model", required=True, help="clip model, e.g. <recording>_clip")
    parser.add_argument("--out", required=True, help="folder for stimuli, responses, numbers and figures")
    parser.add_argument("--truth", help="virtual-mouse recording folder: compare with its ground truth")
    parser.add_argument("--quiet", action="store_true")


def register(commands, benchmarks) -> None:
    experiment = commands.add_parser("experiment", help="in-silico experiments on a served twin")
    kinds = experiment.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    tuning = kinds.add_parser("tuning", help="orientation/direction tuning from drifting gratings (OSI, DSI, von Mises)")
    _common(tuning)
    tuning.set_defaults(handler=_tuning)
    rf = kinds.add_parser("rf", help="receptive fields from flashing dots (STA, SSI, 2D Gaussian centre)")
    _common(rf)
    rf.set_defaults(handler=_rf)
