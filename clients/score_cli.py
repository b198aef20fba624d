"""`twin score` (a stimulus library through a served clip model into a Zarr store, resumable) and
`twin stimuli` (standard stimulus sets as libraries). Results as JSON on stdout, prose on stderr."""

from __future__ import annotations

import sys

from . import connection


def _score(args) -> dict:
    from .score import score

    return score(connection.Connection.from_args(args), args.model, args.library, args.out, in_flight=args.in_flight,
                 on_error=args.on_error, progress=not args.quiet)


def _stimuli(args) -> dict:
    from .library import save_library
    from .stimuli import SETS

    stimuli, parameters = SETS[args.kind]()
    save_library(args.out, stimuli, parameters)
    frames = sum(len(v) for v in stimuli.values())
    print(f"wrote {len(stimuli)} {args.kind} stimuli ({frames} frames) and parameters.json to {args.out}",
          file=sys.stderr)
    return {"library": str(args.out), "kind": args.kind, "stimuli": len(stimuli), "frames": frames}


def register(commands) -> None:
    score = commands.add_parser("score", help="score a stimulus library through a served twin (resumable)")
    connection.add_arguments(score)
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
