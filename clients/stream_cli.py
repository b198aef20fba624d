"""`twin stream`: stream a video through a served twin, print the latency summary, save the responses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_video(path: str | Path, height: int = 36, width: int = 64) -> np.ndarray:
    """Frames (T, height, width) raw pixel values from `.npy` ((T, H, W), or SENSORIUM's (H, W, T))
    or a video file (any format imageio's ffmpeg plugin reads; converted to grey and resized)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video")
    if path.suffix == ".npy":
        video = np.load(path, allow_pickle=False)
        if video.ndim == 3 and video.shape[:2] == (height, width) and video.shape[2] != width:
            video = np.moveaxis(video, -1, 0)
        if video.ndim != 3 or video.shape[1:] != (height, width):
            raise ValueError(f"{path}: expected frames (T, {height}, {width}), got {video.shape}")
        return video
    import imageio.v3 as iio
    from PIL import Image

    frames = []
    for frame in iio.imiter(path):
        grey = Image.fromarray(np.asarray(frame)).convert("L").resize((width, height), Image.BILINEAR)
        frames.append(np.asarray(grey))
    if not frames:
        raise ValueError(f"{path}: no frames")
    return np.stack(frames)


def _stream(args) -> int:
    from .stream import StreamClient

    with StreamClient(args.url, args.model) as client:
        video = read_video(args.video)
        behavior, pupil = client.default_behavior
        behavior = np.load(args.behavior) if args.behavior else np.tile(behavior, (len(video), 1))
        pupil = np.load(args.pupil_center) if args.pupil_center else np.tile(pupil, (len(video), 1))
        from tqdm import tqdm

        responses = np.stack(list(tqdm(client.run(video, behavior, pupil), total=len(video), unit="frame",
                                       disable=args.quiet)))
        summary = {"model": args.model, "frames": len(video), "neurons": responses.shape[1],
                   "warmup_frames": client.receptive_field - 1, "reconnects": client.reconnects,
                   "latency": client.latency_summary()}
    np.save(args.out, responses)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} (frames × neurons; the first {summary['warmup_frames']} frames are warm-up)")
    return 0


def register(commands, benchmarks) -> None:
    stream = commands.add_parser("stream", help="stream a video through a served twin, frame by frame")
    stream.add_argument("--url", default="localhost:8001", help="Triton gRPC address")
    stream.add_argument("--model", required=True, help="stream model, e.g. <recording>_stream")
    stream.add_argument("--video", required=True, help=".npy (T, 36, 64) or a video file")
    stream.add_argument("--behavior", help=".npy (T, 2) raw pupil size and running speed (default: the recording's mean)")
    stream.add_argument("--pupil-center", help=".npy (T, 2) raw pupil position (default: the recording's mean)")
    stream.add_argument("--out", default="responses.npy", help="where to save the responses (T, N)")
    stream.add_argument("--quiet", action="store_true", help="no progress bar")
    stream.set_defaults(handler=_stream)
