"""`twin score`: a stimulus library through a served clip model into a Zarr store (resumable)."""

from __future__ import annotations

import json


def _score(args) -> int:
    from .score import score

    summary = score(args.url, args.model, args.library, args.out, in_flight=args.in_flight,
                    on_error=args.on_error, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def register(commands, benchmarks) -> None:
    score = commands.add_parser("score", help="score a stimulus library through a served twin (resumable)")
    score.add_argument("--url", default="localhost:8001", help="Triton gRPC address")
    score.add_argument("--model", required=True, help="clip model, e.g. <recording>_clip")
    score.add_argument("--library", required=True, help="folder of .npy/.npz/video files, or an .h5 file")
    score.add_argument("--out", required=True, help="Zarr store; an existing one of the same run is resumed")
    score.add_argument("--in-flight", type=int, default=8, help="requests kept in flight (fills dynamic batching)")
    score.add_argument("--on-error", choices=["skip", "stop"], default="skip",
                       help="an unreadable or refused stimulus: record it and go on, or stop")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=_score)
