"""Every bound `twin serve` puts on what clients can make it hold or do, with its flag.

A request that would cross a limit is refused with an error naming the limit and the flag that
raises it; nothing else changes. The memory a server can hold is then bounded by

    streams:  3 × max_streams × state bytes per stream (preallocated pool, ≤ max_state_bytes)
    clips:    max_request_bytes of input per request (plus its responses: max_request_frames × N × 4
              bytes), max_queue waiting requests, work capped at max_clip_frames frames per graph call

What no flag here can bound: Triton 2.51 itself reads a whole gRPC message (up to 2 GiB) or HTTP
body before any model sees it; put a proxy with a request-size cap in front of a server that
strangers can reach.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from twinserve.contract import ModelParameters

MiB = 2**20


@dataclass(frozen=True)
class Limits:
    max_streams: int = 64                 # concurrent streams: state-pool slots, also the batch of one step
    idle_timeout_s: float = 60.0          # a stream without a frame for this long is freed
    # The limits the served models read from their parameters default to the contract's values.
    max_state_bytes: int = ModelParameters.max_state_bytes        # the whole state pool: 3 × max_streams × state
    max_clip_frames: int = ModelParameters.max_clip_frames        # input frames per clip-graph call (then pieces)
    max_request_frames: int = ModelParameters.max_request_frames  # frames (batch × time) per clip request
    max_request_bytes: int = ModelParameters.max_request_bytes    # input bytes per request, all inputs together
    max_queue: int = 64                   # clip requests waiting; more are refused at once
    queue_timeout_s: float = 60.0         # a clip request waiting longer is refused

    def __post_init__(self):
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{flag(f.name)} must be positive, got {getattr(self, f.name)}")

    def check_pool(self, bytes_per_slot: int) -> None:
        """Refuse a state pool larger than `max_state_bytes` (ValueError naming both flags);
        bytes_per_slot: one stream's share of the pool (its state, with staging)."""
        total = self.max_streams * bytes_per_slot
        if total > self.max_state_bytes:
            raise ValueError(f"{self.max_streams} streams × {bytes_per_slot / MiB:.1f} MiB of state pool each = "
                             f"{total / MiB:.0f} MiB, more than {flag('max_state_bytes')} = "
                             f"{self.max_state_bytes / MiB:.0f} MiB: lower {flag('max_streams')} or raise "
                             f"{flag('max_state_bytes')}")


def flag(name: str) -> str:
    """The `twin serve` flag of a limit: max_state_bytes → --max-state-bytes."""
    return "--" + name.removesuffix("_s").replace("_", "-")


HELP = {
    "max_streams": "concurrent streams per model: preallocated state slots; a START beyond them is refused",
    "idle_timeout_s": "seconds without a frame before a stream is freed",
    "max_state_bytes": "bytes of stream state per model at most (3 × max-streams × state per stream)",
    "max_clip_frames": "input frames per clip-graph call; longer clips run in overlapping pieces (finite "
                       "receptive field) or are refused (unbounded memory)",
    "max_request_frames": "frames (batch × time) per clip request",
    "max_request_bytes": "input bytes per request",
    "max_queue": "clip requests waiting at most; more are refused at once",
    "queue_timeout_s": "seconds a clip request may wait in the queue before it is refused",
}


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per limit, defaults from `Limits`."""
    defaults = Limits()
    for f in fields(Limits):
        default = getattr(defaults, f.name)
        parser.add_argument(flag(f.name), dest=f.name, type=type(default), default=default,
                            help=f"{HELP[f.name]} (default {default})")


def from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
