"""`twin stream`: stream a video through a served twin, save the responses, return the latency summary
(printed as JSON on stdout by `twinserve.cli`; progress and prose on stderr)."""

from __future__ import annotations

import sys

import numpy as np

from . import connection


def _stream(args) -> dict:
    from tqdm import tqdm

    from .library import read_video
    from .stream import StreamClient

    with StreamClient(connection.Connection.from_args(args), args.model) as client:
        video = read_video(args.video, client.parameters.frame_shape)
        behavior, pupil = client.default_behavior
        behavior = np.load(args.behavior) if args.behavior else np.tile(behavior, (len(video), 1))
        pupil = np.load(args.pupil_center) if args.pupil_center else np.tile(pupil, (len(video), 1))
        responses = np.stack(list(tqdm(client.run(video, behavior, pupil), total=len(video), unit="frame",
                                       disable=args.quiet)))
        summary = {"model": args.model, "frames": len(video), "neurons": responses.shape[1],
                   "warmup_frames": client.offset, "reconnects": client.reconnects,
                   "latency": client.latency_summary()}
    np.save(args.out, responses)
    print(f"wrote {args.out} (frames × neurons; the first {summary['warmup_frames']} frames are warm-up)",
          file=sys.stderr)
    return {**summary, "out": str(args.out)}


def register(commands) -> None:
    stream = commands.add_parser("stream", help="stream a video through a served twin, frame by frame")
    connection.add_arguments(stream)
    stream.add_argument("--model", required=True, help="stream model, e.g. <recording>_stream")
    stream.add_argument("--video", required=True, help=".npy (T, H, W) at the model's frame shape, or a video file (converted to grey and resized)")
    stream.add_argument("--behavior",
                        help=".npy (T, 2) raw pupil size and running speed (default: the recording's mean)")
    stream.add_argument("--pupil-center", help=".npy (T, 2) raw pupil position (default: the recording's mean)")
    stream.add_argument("--out", default="responses.npy", help="where to save the responses (T, N)")
    stream.add_argument("--quiet", action="store_true", help="no progress bar")
    stream.set_defaults(handler=_stream)
