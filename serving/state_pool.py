"""The stream model's memory: a preallocated pool of state slots, one per allowed stream.

Each state tensor i of the step graph has one pool array of shape (slots, *shape_i), and two
staging arrays of the same shape. A stream owns one slot. A step of the streams in `slots` reads
their states straight from the pool when the slots are consecutive (the usual case for streams
that step together: slots are handed out lowest first), and otherwise gathers them into the input
staging array (`np.take` into preallocated memory); the graph writes the next states into the
output staging array, which is then copied back into the slots. Nothing is allocated per frame:
the copies run on memory that is already mapped (fresh arrays per frame cost page faults, which on
this CPU took as long as the copies themselves).

The pool's size is fixed when the model loads: 3 × slots × state bytes per stream, whatever
clients do. Pages are touched only when a slot (or a staging row) is first used.
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
    COPIES = 3  # the pool and its two staging arrays

    def __init__(self, shapes: list[tuple[int, ...]], slots: int, limit_hint: str = "--max-streams"):
        self.shapes, self.slots, self.limit_hint = [tuple(s) for s in shapes], slots, limit_hint
        self.states, self.gathered, self.next_states = (
            [np.zeros((slots, *shape), np.float32) for shape in self.shapes] for _ in range(self.COPIES))
        self.slot_of: dict[int, int] = {}      # sequence id → slot
        self.last_seen: dict[int, float] = {}  # sequence id → time of its last frame (monotonic seconds)
        self._free = list(range(slots))        # a heap: the lowest free slot first

    @classmethod
    def nbytes(cls, shapes: list[tuple[int, ...]], slots: int) -> int:
        """Bytes of a pool of `slots` slots (with its staging arrays)."""
        return cls.COPIES * slots * sum(4 * int(np.prod(shape)) for shape in shapes)

    def __len__(self) -> int:
        return len(self.slot_of)

    def open(self, sequence: int, now: float) -> int:
        """A zeroed slot for a new stream → the slot. Refuses a live id and a full pool."""
        if sequence in self.slot_of:
            raise PoolError(f"sequence {sequence} is already open: END it before starting it again, "
                            "or start a new sequence id")
        if not self._free:
            raise PoolError(f"all {self.slots} stream slots are in use: end a stream, wait for an idle one to be "
                            f"freed, or serve with a larger {self.limit_hint}")
        slot = heapq.heappop(self._free)
        for state in self.states:
            state[slot] = 0.0
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
        count = len(slots)
        outputs = [array[:count] for array in self.next_states]
        if slots[-1] - slots[0] == count - 1:  # consecutive: read in place
            window = slice(slots[0], slots[0] + count)
            inputs = [state[window] for state in self.states]
        else:
            window = np.asarray(slots)
            inputs = [np.take(state, window, axis=0, out=staging[:count])
                      for state, staging in zip(self.states, self.gathered)]

        def write_back():
            for state, output in zip(self.states, outputs):
                state[window] = output

        return StepBuffers(inputs, outputs, write_back)
