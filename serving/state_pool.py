"""The stream model's memory: a preallocated pool of state slots, one per allowed stream.

Each state tensor i of the step graph has two buffers of shape (slots, *shape_i). A stream owns one
slot; its current state lives in buffer `parity[slot]`, and a step writes the next state straight
into the other buffer and flips the parity, so nothing is concatenated, sliced or allocated per
frame. A batch whose slots are consecutive and share a parity (streams that step together, the
usual case: slots are handed out lowest first and a new stream joins with the parity of the last
step) is read and written in place by the graph; any other batch goes through a staging copy.

The pool's size is fixed when the model loads: 2 × slots × state bytes per stream, whatever
clients do. Pages are touched only when a slot is first used.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class PoolError(ValueError):
    """A stream could not be opened or found; the message says why and what to do."""


@dataclass
class StepBuffers:
    """Where one step reads its states (inputs, each (B, *shape_i)) and writes the next ones
    (outputs, same shapes); call `finish()` after the graph ran."""

    inputs: list[np.ndarray]
    outputs: list[np.ndarray]
    finish: Callable[[], None]


class StatePool:
    def __init__(self, shapes: list[tuple[int, ...]], slots: int, limit_hint: str = "--max-streams"):
        self.shapes, self.slots, self.limit_hint = [tuple(s) for s in shapes], slots, limit_hint
        self.buffers = [[np.zeros((slots, *shape), np.float32) for shape in self.shapes] for _ in range(2)]
        self.parity = np.zeros(slots, np.int8)
        self.slot_of: dict[int, int] = {}      # sequence id → slot
        self.last_seen: dict[int, float] = {}  # sequence id → time of its last frame (monotonic seconds)
        self._free = list(range(slots))        # a heap: the lowest free slot first
        self._recent_parity = 0

    @staticmethod
    def nbytes(shapes: list[tuple[int, ...]], slots: int) -> int:
        """Bytes of a pool of `slots` slots (both buffers)."""
        return 2 * slots * sum(4 * int(np.prod(shape)) for shape in shapes)

    def __len__(self) -> int:
        return len(self.slot_of)

    def __contains__(self, sequence: int) -> bool:
        return sequence in self.slot_of

    def open(self, sequence: int, now: float) -> int:
        """A zeroed slot for a new stream → the slot. Refuses a live id and a full pool."""
        if sequence in self.slot_of:
            raise PoolError(f"sequence {sequence} is already open: END it before starting it again, "
                            "or start a new sequence id")
        if not self._free:
            raise PoolError(f"all {self.slots} stream slots are in use: end a stream, wait for an idle one to be "
                            f"freed, or serve with a larger {self.limit_hint}")
        slot = heapq.heappop(self._free)
        self.parity[slot] = self._recent_parity
        for buffer in self.buffers[self._recent_parity]:
            buffer[slot] = 0.0
        self.slot_of[sequence], self.last_seen[sequence] = slot, now
        return slot

    def close(self, sequence: int) -> None:
        """Free a stream's slot (nothing happens for an unknown id)."""
        slot = self.slot_of.pop(sequence, None)
        self.last_seen.pop(sequence, None)
        if slot is not None:
            heapq.heappush(self._free, slot)

    def idle(self, now: float, timeout: float) -> list[int]:
        """Sequences whose last frame came more than `timeout` seconds before `now`."""
        return [sequence for sequence, seen in self.last_seen.items() if now - seen > timeout]

    def slot(self, sequence: int) -> int:
        try:
            return self.slot_of[sequence]
        except KeyError:
            raise PoolError(f"sequence {sequence} was never started, or it ended or idled out; "
                            "open it with sequence_start=True") from None

    def step_buffers(self, slots: list[int]) -> StepBuffers:
        """Buffers for one step of the streams in `slots` (sorted ascending, distinct)."""
        first, count = slots[0], len(slots)
        parities = self.parity[slots]
        if slots[-1] - first == count - 1 and (parities == parities[0]).all():  # consecutive, one parity
            read, write = int(parities[0]), 1 - int(parities[0])
            window = slice(first, first + count)

            def flip():
                self.parity[window] = write
                self._recent_parity = write

            return StepBuffers([b[window] for b in self.buffers[read]], [b[window] for b in self.buffers[write]], flip)
        inputs = [np.stack([self.buffers[p][layer][s] for s, p in zip(slots, parities)])
                  for layer in range(len(self.shapes))]
        outputs = [np.empty_like(array) for array in inputs]

        def scatter():
            for layer, output in enumerate(outputs):
                for row, (s, p) in enumerate(zip(slots, parities)):
                    self.buffers[1 - p][layer][s] = output[row]
            self.parity[slots] = 1 - parities

        return StepBuffers(inputs, outputs, scatter)
